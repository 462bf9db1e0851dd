"""One pass: scan the registries, plan, apply. Shared by `plan`, `run` and the daemon."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from retention.allowlist import unknown_host_pins
from retention.config import RegistrySettings
from retention.executor import SHUTTING_DOWN, Executor, Report
from retention.inventory import Inventory, Manifest
from retention.kube import NOTHING, InUse, in_use_pass
from retention.outcomes import FAILED, outcome_key
from retention.planner import Plan, only, plan
from retention.policy import Policy, policy_warnings
from retention.progress import Progress
from retention.registry.client import RegistryClient, RetryPolicy
from retention.registry.entra import EntraExchange, TokenCredential, default_credential
from retention.registry.ghcr import GhcrClient
from retention.scanner import Scanner
from retention.setup import Setup
from retention.state import State
from retention.storage import RegistryStorage, reclaimable_by_repository, storage

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
    # How the clients wait (retries, GitHub's rate limits) and, for GitHub's
    # x-ratelimit-reset, what time it is (epoch seconds). None: asyncio.sleep, time.time.
    sleep: Callable[[float], Awaitable[None]] | None = None
    wall: Callable[[], float] | None = None


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
    waits = {"sleep": connections.sleep} if connections.sleep is not None else {}
    if settings.type == "ghcr":
        return GhcrClient(settings, observe=metrics.observer(settings.name) if metrics else None,
                          retry=connections.retry, wall=connections.wall or time.time, **waits)
    return RegistryClient(
        settings,
        observe=metrics.observer(settings.name) if metrics else None,
        retry=connections.retry,
        entra=entra,
        **waits,
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
                  now: Callable[[], datetime] = lambda: datetime.now(UTC),
                  progress: Progress | None = None) -> dict[str, Inventory]:
    """Scan each registry (at once: they are independent) and record what was seen (each
    repository as soon as it is read)."""

    async def one(name: str, client: RegistryClient) -> Inventory:
        step = None if progress is None else (
            lambda done, total: progress.step(f"{name}: repositories read", done, total))
        scanner = Scanner(client, cache=state, sightings=state,
                          known_digests=lambda repo: state.known_digests(name, repo),
                          last_tags=lambda repo: state.last_tags(name, repo), clock=now,
                          known_repositories=lambda: state.known_repositories(name),
                          progress=step)
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
                             parsed=f.parsed, schema1=f.schema1))
            repo = replace(repo, last_known=tuple(last_known))
        repos.append(repo)
    return replace(inventory, repositories=tuple(repos))


def warn_mistakes(setup: Setup, policies: Iterable[Policy],
                  inventories: Mapping[str, Inventory]) -> None:
    """Mistakes that would silently do nothing, each run (SPEC "Commands"): a typo in an
    include pattern plans nothing and looks like a clean registry; a pin for a host no
    registry has protects nothing."""
    policies = list(policies)
    for p in policies:
        inventory = inventories.get(p.registry or "")
        if inventory is not None and not any(p.applies_to(r.name)
                                             for r in inventory.repositories):
            log.warning("policy matches no repository", policy=p.name, registry=p.registry,
                        source=p.source, repositories=len(inventory.repositories),
                        hint="check repositories.include and exclude against "
                             "'retention inventory'")
    for problem in policy_warnings(policies):
        log.warning("policy does less than it seems", detail=str(problem))
    for pin in unknown_host_pins(setup.allowlist, setup.config.hosts()):
        log.warning("allowlist entry for an unknown host", entry=pin.source, host=pin.host,
                    hint="no configured registry has this host (url or aliases): the entry "
                         "protects nothing")


def restored_holds(setup: Setup, state: State, now: datetime
                   ) -> dict[tuple[str, str, str], datetime]:
    """What restores put back, with when each hold ends. A restored manifest is held for
    restored_hold after its restore, measured in time: plans, dry runs and runs in between
    use none of it up."""
    hold = setup.config.restored_hold
    hosts, registries = setup.config.hosts(), setup.config.registries
    held: dict[tuple[str, str, str], datetime] = {}
    for (registry, repository, digest), at in state.restored_since(now - hold).items():
        # Held in every registry configured with that URL: one storage (as in_use).
        settings = registries.get(registry)
        for name in hosts.registries_of(settings.host) if settings else (registry,):
            key = (name, repository, digest)
            held[key] = max(held.get(key, at + hold), at + hold)
    return held


def plan_all(setup: Setup, inventories: Mapping[str, Inventory], policies: Iterable[Policy],
             *, now: datetime, in_use: InUse = NOTHING,
             restored: Mapping[tuple[str, str, str], datetime] | None = None) -> Plan:
    """One plan over every registry, each policy planned against its own registry."""
    by_registry: dict[str, list[Policy]] = {}
    for p in policies:
        if p.registry is not None:
            by_registry.setdefault(p.registry, []).append(p)
    options = replace(setup.planner_options(), in_use=in_use.protected,
                      restored=restored or {})
    parts = [plan(inventories[name], chosen, now=now, options=options)
             for name, chosen in sorted(by_registry.items()) if name in inventories]
    merged = sorted((pp for part in parts for pp in part.policies), key=lambda pp: pp.policy)
    if in_use.failure:  # what runs is unknown: every policy deletes nothing (fail closed)
        merged = [replace(pp, aborted=in_use.failure) for pp in merged]
    return Plan(now=now, policies=tuple(merged))


def state_problem(state: State) -> str | None:
    """What a run that could not use its state database says (None when it could)."""
    if state.unusable is None:
        return None
    return (f"{state.unusable}: nothing is deleted until it is fixed or moved aside "
            "(a new one is then made)")


def storage_of(inventories: Mapping[str, Inventory], plan: Plan) -> dict[str, RegistryStorage]:
    """Each registry's storage, with what ``plan`` (of every policy) would reclaim in each
    repository."""
    out = {}
    for name, inventory in inventories.items():
        reclaimable = reclaimable_by_repository(
            (a.repository, a.bytes) for p in plan.policies
            if p.registry == name and not p.aborted for a in p.actions)
        out[name] = storage(inventory, reclaimable=reclaimable)
    return out


def record_storage(metrics: Metrics, setup: Setup, inventories: Mapping[str, Inventory],
                   plan: Plan) -> None:
    for name, figures in storage_of(inventories, plan).items():
        metrics.record_storage(figures, at=inventories[name].collected_at.timestamp(),
                               top=setup.config.repository_metrics_top)


@dataclass(frozen=True, slots=True)
class RunResult:
    plan: Plan
    report: Report
    dry_run: bool
    # Why the state database could not be used (the run then ran on one in memory and
    # deleted nothing): a run that could not do its work is a failure, never a success
    # that alerts cannot see (SPEC "Embedded state").
    state_error: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.state_error or self.report.failed or self.report.errors
                    or self.report.interrupted
                    or any(p.aborted or p.errors for p in self.plan.policies))

    def policy_outcome(self, name: str) -> str:
        """success, failure or aborted, for retention_runs_total."""
        p = next(pp for pp in self.plan.policies if pp.policy == name)
        if p.aborted:
            return "aborted"
        if self.state_error:
            return "failure"
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
    progress: Progress | None = None,
    select: Callable[[Plan, Mapping[str, Inventory]], Plan] | None = None,
) -> RunResult:
    """Scan, plan and apply the given policies. Raises RegistryError when a registry cannot
    be scanned at all (unreachable, credentials refused). ``select`` narrows the fresh plan
    before it is applied (`retention apply`: only what a reviewed plan also lists); it is
    given the inventories the plan was made from."""
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
        inventories = await collect(clients, state, now=clock, progress=progress)
        warn_mistakes(setup, policies, inventories)
        in_use = await in_use_pass(setup.config, inventories, state, now=clock(),
                                   metrics=metrics)
        now = clock()
        whole = plan_all(setup, inventories, settled.values(), now=now, in_use=in_use,
                         restored=restored_holds(setup, state, now))
        the_plan = only(whole, [p.name for p in policies], inventories)
        if metrics:
            metrics.record_plan(the_plan)
            record_storage(metrics, setup, inventories, whole)
        if select is not None:
            the_plan = select(the_plan, inventories)
        step = None if progress is None else (
            lambda done, total: progress.step("deletions done", done, total))
        executor = Executor(clients, state=state, metrics=metrics, clock=clock, stop=stop,
                            confirm_window=setup.config.confirm_window.total_seconds(),
                            progress=step)
        report = await executor.apply(the_plan, dry_run=dry_run, inventories=inventories)
    result = RunResult(the_plan, report, dry_run, state_error=state_problem(state))
    if metrics:
        elapsed = time.monotonic() - started
        for p in the_plan.policies:
            outcome = result.policy_outcome(p.policy)
            metrics.runs.labels(p.policy, outcome).inc()
            metrics.run_duration.labels(p.policy).observe(elapsed)
            if outcome == "success":
                metrics.last_success.labels(p.policy).set(time.time())
    return result
